#!/bin/sh
# Stand-in for "apt install some-security-framework": installs rules, a scanner and its config.
set -eu
mkdir -p /etc/sec /var/log/sec
cp /opt/sec/rules/*.rules /etc/sec/
install -m 0755 /opt/sec/sec-scan /usr/local/bin/sec-scan
printf 'rules_dir=/etc/sec\nlog=/var/log/sec/scan.log\n' > /etc/sec/sec.conf
