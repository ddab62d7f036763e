from mdrec.train.cli import main

main()
