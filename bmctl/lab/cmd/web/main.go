// web: the lab's test web server. Every answer names the pod and host that served it and the
// client address it saw, so a test can tell which backend answered and whether the client's
// IP was kept (externalTrafficPolicy: Local) or replaced (SNAT):
//
//	pod=web-5d9c-abcde host=lab-w1 client=198.51.100.2:40312 method=GET path=/ vhost=a.test xff=198.51.100.2
//
// vhost is the request's Host header and xff its X-Forwarded-For (- when absent): behind an ingress
// the client is the proxy, and xff says whether the client's own address reached the backend.
//
// Port: --port N, else $PORT, else 8080. The pod name comes from $POD_NAME (set it with the
// downward API), the host from $NODE_NAME, else os.Hostname. /healthz answers "ok".
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func main() {
	port := flag.String("port", env("PORT", "8080"), "TCP port to listen on")
	flag.Parse()
	hostname, _ := os.Hostname()
	pod := env("POD_NAME", hostname)
	host := env("NODE_NAME", hostname)

	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		xff := r.Header.Get("X-Forwarded-For")
		if xff == "" {
			xff = "-"
		}
		fmt.Fprintf(w, "pod=%s host=%s client=%s method=%s path=%s vhost=%s xff=%s\n", pod, host, r.RemoteAddr,
			r.Method, r.URL.Path, r.Host, xff)
	})
	go func() { // stop at once on SIGTERM/SIGINT (PID 1 of a container gets no default handler)
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
		os.Exit(0)
	}()
	log.Printf("web: pod %s on %s listening on :%s", pod, host, *port)
	log.Fatal(http.ListenAndServe(":"+*port, nil))
}
