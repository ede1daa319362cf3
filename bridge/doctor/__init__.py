"""``bridge doctor`` and the daemons' start-up checks (issue 12): checks as plain functions
over what the components report, returning frozen results; the CLI only renders them."""
