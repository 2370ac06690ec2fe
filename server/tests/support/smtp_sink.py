"""A real SMTP server (aiosmtpd) on loopback for the delivery tests.

Usage: smtp_sink.py OUT_DIR [LIFETIME_SECS]
Listens on 127.0.0.1 on an ephemeral port, prints the port as the first line of
stdout, and stores every accepted message in OUT_DIR as <n>.eml, headed by
X-Sink-Mail-From and X-Sink-Rcpt-To lines with the envelope. Recipients whose local
part starts with "reject" get a permanent 550 and those starting with "busy" a
transient 451, so the tests can see both kinds of refusal. Exits when stdin closes
or after LIFETIME_SECS (default 120), whichever comes first.
"""

import asyncio
import os
import socket
import sys
import threading

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local.startswith("reject"):
            return "550 5.1.1 mailbox unavailable"
        if local.startswith("busy"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        path = os.path.join(self.out_dir, "%d.eml" % self.count)
        tmp = path + ".part"
        with open(tmp, "wb") as f:
            f.write(b"X-Sink-Mail-From: " + envelope.mail_from.encode() + b"\r\n")
            f.write(b"X-Sink-Rcpt-To: " + ", ".join(envelope.rcpt_tos).encode() + b"\r\n")
            f.write(envelope.original_content)
        # Renamed when complete, so a reader never sees half a message.
        os.replace(tmp, path)
        return "250 Message accepted for delivery"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    out_dir = sys.argv[1]
    lifetime = float(sys.argv[2]) if len(sys.argv) > 2 else 120.0
    # aiosmtpd binds the port itself (port 0 breaks its start-up self-check), so a
    # just-freed ephemeral port is used, and another one if something took it meanwhile.
    for attempt in range(5):
        port = free_port()
        controller = Controller(Sink(out_dir), hostname="127.0.0.1", port=port)
        try:
            controller.start()
            break
        except Exception:
            if attempt == 4:
                raise
    print(port, flush=True)
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait(lifetime)
    controller.stop()


if __name__ == "__main__":
    main()
