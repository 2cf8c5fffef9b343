"""A service at run time: its listener, pool, health, admission, queue and open sessions.

`service` holds the `Service` object and its phases, `admission` and `queue` the two
decisions made per connection before a backend is dialled, `budget` the process-wide cap,
and `shared` the counts that worker processes share.
"""
