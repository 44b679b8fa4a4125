from gpux.cli.app import main

main()
