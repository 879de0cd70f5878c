from pipelines.app import main

main()
