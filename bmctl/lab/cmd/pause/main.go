// pause: the sandbox (infra) container of every pod. It holds the pod's namespaces, reaps the
// zombies of processes that end up as its children (it is PID 1 of the pod's PID namespace when
// the pod shares one), and exits when it is told to stop (SIGINT or SIGTERM), as upstream's
// pause.c does. Built by bmctl/lab/binaries.py (CGO off, static).
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

const version = "bmctl-lab-1"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Printf("pause.go %s\n", version)
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "Warning: pause should be the first process")
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			fmt.Fprintf(os.Stderr, "Shutting down, got signal: %v\n", sig)
			os.Exit(0)
		}
		for { // reap every child that has ended
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
