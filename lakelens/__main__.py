from lakelens.cli import main

main()
