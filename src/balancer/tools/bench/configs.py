"""The configs of the peers: nginx as the backends and as a stream balancer, and HAProxy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from balancer.tools.bench.options import HOST, NOFILE_NGINX
from balancer.tools.bench.peers import Tools


def _nginx_main(prefix: Path, as_root: bool) -> str:
    """The top of an nginx config: one foreground process, its files under `prefix`."""
    return f"""{"user root;" if as_root else ""}
worker_processes 1;
daemon off;
master_process off;
worker_rlimit_nofile {NOFILE_NGINX};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections {NOFILE_NGINX - 1000};
}}"""


def nginx_backend_conf(tmp: Path, ports: Sequence[int], root: Path, as_root: bool) -> str:
    prefix = tmp / "backend"
    listens = "\n".join(f"        listen {HOST}:{p} backlog=4096;" for p in ports)
    return f"""# nginx backends for balancer bench
{_nginx_main(prefix, as_root)}
http {{
    access_log off;
    default_type text/plain;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    client_header_timeout 600s;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
{listens}
        root {root};
        location = / {{
            return 200 "hello\\n";
        }}
    }}
}}
"""


def nginx_stream_conf(
    tmp: Path, port: int, backends: Sequence[int], tools: Tools, as_root: bool
) -> str:
    prefix = tmp / "stream"
    load = f"load_module {tools.stream_module};" if tools.stream_module else ""
    servers = "\n".join(f"        server {HOST}:{p};" for p in backends)
    return f"""# nginx stream load balancer for balancer bench
{load}
{_nginx_main(prefix, as_root)}
stream {{
    upstream backends {{
{servers}
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        proxy_pass backends;
        proxy_timeout 600s;
    }}
}}
"""


def haproxy_conf(port: int, backends: Sequence[int]) -> str:
    servers = "\n".join(f"    server s{i} {HOST}:{p}" for i, p in enumerate(backends, 1))
    return f"""# HAProxy for balancer bench
global
    nbthread 1
    maxconn 9000

defaults
    mode tcp
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    maxconn 9000

frontend bench
    bind {HOST}:{port}
    default_backend backends

backend backends
    balance roundrobin
{servers}
"""
