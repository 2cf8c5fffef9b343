"""Health: which backends may take traffic. `checks` reads check answers without I/O, `probe`
runs one check, `tracker` turns checks and passive reports into up and down."""
