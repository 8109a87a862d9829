from pantau.dev.nodeagent.cli import main

main()
