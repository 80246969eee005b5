"""Archive administration shared by the command line and the REST admin API: browse
(browse.py), statistics (stats.py), deletion (delete.py), outgoing queues (queues.py) and
retention (retention.py). No HTTP and no click here: `pacsd.cli_admin` and
`pacsd.http.admin_api` adapt these functions, so both interfaces run the same code.
"""
