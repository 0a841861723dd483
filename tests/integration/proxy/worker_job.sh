#!/bin/sh
# The worker job of test_proxy_injection.py: the proxy's wire shapes and refusals as a
# job sees them. Each result line is "<label>:<status>"; a refusal's body comes first.
set -u
S=/run/flashpods/proxy.sock
curl -sS --unix-socket $S http://flashpods-proxy/ca.pem -o /tmp/ca.pem || exit 3
c() { curl -sS --cacert /tmp/ca.pem --unix-socket $S "$@"; }
c -H "Authorization: token $GITHUB_TOKEN" https://api.github.com/user -o /dev/null -w 'api:%{http_code}\n'
c -u "x-access-token:$GITHUB_TOKEN" 'https://github.com/o/r.git/info/refs?service=git-upload-pack' -o /dev/null -w 'git:%{http_code}\n'
c -H "Authorization: token $GITHUB_TOKEN" https://other.example/echo -o /dev/null -w 'other:%{http_code}\n'
c -H "Authorization: token fpph.GITHUB_TOKEN.job_aaaaaaaaaaaa" https://api.github.com/foreign -w '\nforeign:%{http_code}\n'
c -H "x-api-key: fpph.ANTHROPIC_API_KEY.$FLASHPODS_JOB_ID" https://api.anthropic.com/v1/messages -w '\nnotgranted:%{http_code}\n'
# The injected request must go to the host the connection is for, not another vhost.
c -H 'Host: evil.example' -H "Authorization: token $GITHUB_TOKEN" https://api.github.com/vhost -w '\nvhost:%{http_code}\n'
# A header a server might echo back gets no value put in; a bare LF is refused.
c -H "X-Echo: $GITHUB_TOKEN" https://api.github.com/reflect-header -o /dev/null -w 'echo:%{http_code}\n'
python3 - <<'PY'
import socket, ssl
s = socket.socket(socket.AF_UNIX)
s.connect("/run/flashpods/proxy.sock")
tls = ssl.create_default_context(cafile="/tmp/ca.pem").wrap_socket(s, server_hostname="api.github.com")
tls.sendall(b"GET /smuggle HTTP/1.1\r\nHost: api.github.com\r\nX-A: 1\nAuthorization: x\r\n\r\n")
print("smuggle:" + tls.recv(4096).split(b" ")[1].decode())
PY
python3 - <<'PY'
import os, socket, ssl
def connect(target):
    s = socket.socket(socket.AF_UNIX)
    s.connect("/run/flashpods/proxy.sock")
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    return s, head
for target in ["169.254.169.254:80", "10.99.0.1:443", "192.168.99.1:443", "172.16.99.1:443",
               "198.51.100.1:8080", "127.0.0.1:80", "[64:ff9b::a9fe:a9fe]:80",
               "metadata.google.internal:80", "203.0.113.10:443"]:
    s, head = connect(target)
    print(f"connect {target} -> {head.split(b' ')[1].decode() if head else 'closed'}")
    s.close()
# The CONNECT shape to a ruled host: TLS through the tunnel, the token injected.
s, head = connect("api.github.com:443")
tls = ssl.create_default_context(cafile="/tmp/ca.pem").wrap_socket(s, server_hostname="api.github.com")
tls.sendall(("GET /connect-shape HTTP/1.1\r\nHost: api.github.com\r\nAuthorization: Bearer "
             + os.environ["GITHUB_TOKEN"] + "\r\n\r\n").encode())
answer = b""
while True:
    chunk = tls.recv(4096)
    if not chunk:
        break
    answer += chunk
print("connect-shape:" + answer.split(b" ")[1].decode())
PY
for p in /proc/[0-9]*; do cat "$p/environ" 2>/dev/null; echo; done > /artifacts/environ.txt
tar -cf /artifacts/tmp.tar -C /tmp . 2>/dev/null
echo "all done"
