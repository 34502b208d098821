"""Sends one SSH channel data message larger than the maximum packet size the server announced
for the channel (paramiko told to ignore that size), then prints whether the server ended the
connection within 10 s: "closed" or "open".

    WHARF_TEST_PASSWORD=... python3 oversized_channel_data.py PORT USER BYTES [stderr]

With "stderr" the message is extended data (SSH_MSG_CHANNEL_EXTENDED_DATA) instead.
"""
import os
import struct
import sys
import time

import paramiko

port, user, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
t = paramiko.Transport(("127.0.0.1", port))
t.connect(username=user, password=os.environ["WHARF_TEST_PASSWORD"])
ch = t.open_session()
ch.invoke_subsystem("sftp")
print("announced", ch.out_max_packet_size, file=sys.stderr)
ch.out_max_packet_size = size + 1024  # what the server said not to exceed
# One SFTP packet (INIT, padded) filling the message, so only its size is wrong.
body = bytes([1]) + struct.pack(">I", 3) + b"\0" * (size - 9)
payload = struct.pack(">I", len(body)) + body
if len(sys.argv) > 4 and sys.argv[4] == "stderr":
    sent = ch.send_stderr(payload)
else:
    sent = ch.send(payload)
print("sent", sent, file=sys.stderr)
deadline = time.time() + 10
while time.time() < deadline and t.is_active() and not ch.closed:
    time.sleep(0.1)
print("closed" if not t.is_active() or ch.closed else "open")
