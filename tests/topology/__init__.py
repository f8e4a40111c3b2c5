"""The deployment topology as processes on one machine, with no shared disk (issue 11)."""
