"""What the chapters call: run/load studies, tables, and figures in one style."""
