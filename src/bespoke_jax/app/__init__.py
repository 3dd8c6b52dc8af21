"""The command line: jobs, the demo and its report."""
