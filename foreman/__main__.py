from foreman.cli import main

raise SystemExit(main())
