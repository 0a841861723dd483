"""Run inside a job (python3 of the agent image): hold as many proxy connections as the
per-job cap allows, show that one more is refused `busy`, and keep holding a while."""

import socket
import sys
import time

held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_UNIX)
    s.connect("/run/flashpods/proxy.sock")
    held.append(s)
time.sleep(1)  # the proxy admits each in its accepting thread
extra = socket.socket(socket.AF_UNIX)
extra.connect("/run/flashpods/proxy.sock")
extra.settimeout(10)
answer = extra.recv(4096)
print("extra:" + answer.split(b"\r\n", 1)[0].decode(), flush=True)
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
print("released", flush=True)
