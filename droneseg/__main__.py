from droneseg.cli import main

main()
