from covidreg.cli import main

main()
