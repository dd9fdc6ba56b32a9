from crowdcompute.cli import main

raise SystemExit(main())
