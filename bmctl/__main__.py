from bmctl.cli import main

main()
