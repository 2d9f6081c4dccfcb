from arlm.cli import main

raise SystemExit(main())
