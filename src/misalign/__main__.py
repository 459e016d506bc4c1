from misalign.cli import main

main()
