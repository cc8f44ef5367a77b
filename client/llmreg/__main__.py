from llmreg.cli import main

raise SystemExit(main())
