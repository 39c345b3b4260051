from pipeline.cli.audit import main

main()
