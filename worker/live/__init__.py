"""Watching an execution's ``outputs/`` while it runs: change notification and open writers."""
