"""The command line: a thin layer that parses arguments, calls the library and maps errors to exit codes."""
