from rsretrieval.cli import main

raise SystemExit(main())
