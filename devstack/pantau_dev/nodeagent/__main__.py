from pantau_dev.nodeagent.cli import main

main()
