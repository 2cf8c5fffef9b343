"""The harness's reference relays: the least a relay can do in Python (`floor`) and in C
(`floor.c`), to show how much of a gap to HAProxy is the machine's and how much the
balancer's. Neither ever serves users."""
