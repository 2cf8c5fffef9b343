"""The data plane: accepting, connecting and moving bytes, one connection at a time.

`stream` accepts and serves sockets by callbacks, `dial` connects to backends, `relay` joins
the two sides of a connection, and `wheel` holds their deadlines.
"""
