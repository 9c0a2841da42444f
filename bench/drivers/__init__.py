"""Small programs the benchmark runs as child processes, so each is measured on its own."""
