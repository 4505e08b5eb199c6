from treegen.cli import main

main()
