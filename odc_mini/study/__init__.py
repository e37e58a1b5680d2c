"""What the book and the command line use to store, replay and compare runs: the run store
(``store``), the book's saved runs (``saved``) and the experiments behind them
(``experiments``), seed statistics (``seeds``), tables and verdicts (``analysis``), figures
(``viz``), notebook helpers (``notebook``) and the command line (``cli``)."""
