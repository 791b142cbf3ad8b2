# Two entry points for people (README): `sudo make demo` and `sudo make test`.
# Both install what they need first, so they work on a fresh Debian 12 machine.

VENV    ?= .venv
# Debian's own Python (3.11.2 on Debian 12) is what `python3 -m venv` gives users, and it
# is the oldest one pyproject.toml supports: the venv, and so every test, runs on it.
PYTHON  ?= /usr/bin/python3
BIN     := $(VENV)/bin
# The stamp names the interpreter, so another PYTHON rebuilds the venv instead of reusing it.
STAMP   := $(VENV)/.installed-$(subst /,_,$(PYTHON))
# Debian packages the tests and the demo use: the real device stack, filesystems,
# and the standard tools archives must stay compatible with (prometheus: for promtool,
# which validates the metrics textfile and unit-tests the alerting rules;
# prometheus-node-exporter: a real textfile collector reading usbagent's file; dunst +
# xvfb: a real notification server; openssh-client: ssh-keygen for ssh recipients; libarchive-tools: bsdtar, a real non-GNU
# tar that archive preflight must refuse).
APT_PACKAGES := udev udisks2 dbus policykit-1 parted util-linux kmod e2fsprogs xfsprogs \
	btrfs-progs dosfstools exfatprogs age zstd pigz python3-venv prometheus \
	prometheus-node-exporter dunst xvfb \
	openssh-client libarchive-tools

# The real-machine tier (tests/vm): a QEMU guest built with mmdebstrap; stick images are
# made with parted/mkfs on files and read back with mtools.
VM_APT_PACKAGES := qemu-system-x86 qemu-utils mmdebstrap mtools parted dosfstools exfatprogs

.PHONY: deps system-deps vm-deps demo test vm-test lint check bench clean stack-up stack-down stack-status

deps: system-deps $(STAMP)

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

vm-deps:
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES="$(VM_APT_PACKAGES)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install -q --upgrade 'pip>=23'
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# On a machine without systemd as PID 1 nothing runs udevd/UDisks2: bring up what is missing
# for the demo's loop-device stick, and stop afterwards only what was started here.
demo: deps
	$(BIN)/python -m tests.stack run -- $(BIN)/usbagent demo

lint: deps
	$(BIN)/ruff check usbagent tests bench
	$(BIN)/ruff format --check usbagent tests bench
	$(BIN)/mypy

# Lint, the host suite, then the real-machine tier (tests/vm sorts last): one pytest run.
test: lint vm-deps
	$(BIN)/python -m pytest

# The real-machine tier alone (~10 min; the guest image is cached in /var/cache/usbagent-vm).
vm-test: deps vm-deps
	$(BIN)/python -m pytest tests/vm --durations=0

# The real device stack (system D-Bus, udevd, udisksd) for running integration tests by hand;
# `stack-down` stops only what `stack-up` started. pytest starts/stops it by itself.
stack-up: deps
	$(BIN)/python -m tests.stack up

stack-down:
	$(BIN)/python -m tests.stack down

stack-status:
	$(BIN)/python -m tests.stack status

bench: deps
	$(BIN)/python -m bench.archive

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
