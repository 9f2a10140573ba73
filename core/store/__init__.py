"""Layer 3, the results file: its schema, its migrations, and the store that reads and writes ``CellRow``s."""
