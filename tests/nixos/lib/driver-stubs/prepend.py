# What the NixOS test driver declares before a testScript for its mypy pass
# (nixpkgs nixos/lib/test-script-prepend.py, 161b3b0108441b7b27fa89a8ce75823bf9229e43),
# reduced to what the driver stubs next to this file provide. The machines
# (`host: Machine` ...) follow, one line each, then the script.
# (Spelled with collections.abc, contextlib and `list`, which mean the same to mypy.)
from collections.abc import Callable
from contextlib import AbstractContextManager

from test_driver.machine import Machine

start_all: Callable[[], None]
subtest: Callable[[str], AbstractContextManager[None]]
test_script: Callable[[], None]
machines: list[Machine]
run_tests: Callable[[], None]
join_all: Callable[[], None]
serial_stdout_off: Callable[[], None]
serial_stdout_on: Callable[[], None]
