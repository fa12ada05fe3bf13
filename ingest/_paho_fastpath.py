"""The only code of Pulsewire that touches paho's private methods: ingest's receive and ack path.

Why: in the network thread, paho's own handling of a message is most of the cost of ingest. It
reads each packet's fixed header a byte at a time (three `recv()` calls a message), builds a
`Properties` object, an `MQTTMessage` and a debug log line and matches callbacks per message, and
`ack()` costs a wake-up byte and a `send()` per message. `FastClient` reads ahead, frames the
common QoS 1 PUBLISHes it has read ahead in one loop and hands them straight to a sink, and queues
many PUBACKs as one write; see docs/benchmarks.md for what it measured. Everything else (CONNECT,
SUBSCRIBE, keepalive, other publishes) is paho's, except that a PINGRESP late behind a backlog is
not taken for a dead connection (`loop_misc`).

It overrides or calls three private members of `paho.mqtt.client.Client`, with their 2.2 shapes:
`_sock_recv(bufsize) -> bytes`, `_handle_publish() -> MQTTErrorCode` reading `_in_packet["command"]`
and `_in_packet["packet"]`, and `_packet_queue(command, packet, mid, qos)`; it also reads `_sock`,
`_keepalive` and `_last_bytes_received` (a `time_func()` reading, set under `_msgtime_mutex`) and
clears `_ping_t`; `read_publishes` runs only while `_in_packet["command"]` is 0 (no packet begun).
The paho pin in pyproject.toml points here, and `tests/test_paho_fastpath.py` fails when any of
them changes shape, before a silent misbehaviour could.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes

# topic, payload, mid of a QoS 1 message, and its DUP flag: the broker sends it again (never the device's)
FastSink = Callable[[str, bytes, int, bool], None]
_PUBACK = struct.Struct("!BBH")  # fixed header (PUBACK, remaining length 2), packet id: "success"
READ_SIZE = 256 * 1024


class FastClient(mqtt.Client):
    """A paho client whose QoS 1 messages without properties go to `fast_sink`, read ahead in bulk.

    paho only ever calls `_sock_recv` for bytes it needs next, so serving them from our own buffer
    is transparent; the buffer belongs to one socket and is dropped when paho opens another.
    """

    def __init__(self, *args: Any, fast_sink: FastSink, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._rsock: object = None
        self._fast_sink = fast_sink

    def buffered(self) -> bool:
        """Whether bytes already read from the current socket wait to be parsed (select() cannot see them)."""
        return self._rpos < len(self._rbuf) and self._rsock is self._sock

    def queue_pubacks(self, mids: Iterable[int]) -> None:
        """Queue a PUBACK ("success") for each QoS 1 packet id as one write; nothing when not connected."""
        blob = b"".join(_PUBACK.pack(0x40, 2, mid) for mid in mids)
        if blob and self.socket() is not None:
            self._packet_queue(PacketTypes.PUBACK << 4, blob, 0, 0)

    def loop_misc(self) -> MQTTErrorCode:
        """paho's keepalive, with the wait for a PINGRESP counted from the last byte received.

        The broker answers a PINGREQ after every packet it had already queued for us. With a
        backlog of tens of thousands of messages that is longer than the keepalive (85 s measured
        in the ingest bench, docs/benchmarks.md), and paho then closed a connection that was
        delivering all along: "Keep alive timeout", and the broker sent the whole unacked window
        again. Bytes still arriving prove the connection alive, so the outstanding ping is
        forgotten (paho sends the next one on schedule, which keeps the broker's side satisfied);
        a connection silent for a keepalive is still closed as before.
        """
        if self._ping_t and mqtt.time_func() - self._last_bytes_received < self._keepalive:
            self._ping_t = 0
        return super().loop_misc()

    def read_publishes(self, full: Callable[[], bool], limit: int) -> int:
        """Hand each whole QoS 1 PUBLISH without properties at the head of the read-ahead buffer to
        the sink, until `full()` or `limit` of them; how many. Stops at any other packet, and at a
        packet not wholly read yet: paho reads those as before.

        paho's `_packet_read` costs about a dozen Python calls a packet (a `_sock_recv` per header
        byte, its bookkeeping dict, two clock reads under a lock); under load the buffer holds
        hundreds of publishes, so this frames them in one loop.
        """
        if self._in_packet["command"] or not self.buffered():
            return 0  # paho is in the middle of a packet, or nothing is read ahead
        buf, pos, end, sink = self._rbuf, self._rpos, len(self._rbuf), self._fast_sink
        done = 0
        while done < limit and pos < end and buf[pos] & 0xF6 == 0x32:  # PUBLISH at QoS 1, any DUP or RETAIN
            length, shift, at = 0, 0, pos + 1
            while at < end and shift < 28:  # the remaining length: at most 4 bytes, 7 bits each
                byte = buf[at]
                at += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            else:
                break  # the length is not wholly read, or it is malformed: paho decides
            stop = at + length
            if stop > end or length < 2:
                break
            # The layout `_handle_publish` reads, repeated inline: a shared helper called per message
            # made this loop 0.3 µs a message slower (0.55 -> 0.85 µs, 20,000 publishes).
            end_topic = at + 2 + (buf[at] << 8 | buf[at + 1])
            if stop < end_topic + 3 or buf[end_topic + 2] != 0:
                break  # properties, or a packet too short for its topic: paho's path
            mid, dup = buf[end_topic] << 8 | buf[end_topic + 1], bool(buf[pos] & 0x08)
            self._rpos = pos = stop
            done += 1
            topic = buf[at + 2 : end_topic].decode("utf-8", "replace")
            sink(topic, buf[end_topic + 3 : stop], mid, dup)
            if full():
                break
        if done:
            with self._msgtime_mutex:
                self._last_bytes_received = mqtt.time_func()
        return done

    def _handle_publish(self) -> MQTTErrorCode:
        command, packet = self._in_packet["command"], self._in_packet["packet"]
        end_topic = 2 + (packet[0] << 8 | packet[1])
        # QoS 1 and an empty property block only; anything else (QoS 0 or 2, properties) is paho's.
        if (command & 0x06) != 0x02 or len(packet) < end_topic + 3 or packet[end_topic + 2] != 0:
            return super()._handle_publish()
        mid = packet[end_topic] << 8 | packet[end_topic + 1]
        # Mosquitto only forwards valid UTF-8 topics; a bad one becomes an unknown topic, not a crash.
        topic = packet[2:end_topic].decode("utf-8", "replace")
        self._fast_sink(topic, bytes(packet[end_topic + 3 :]), mid, bool(command & 0x08))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _sock_recv(self, bufsize: int) -> bytes:
        if not self.buffered():
            data = super()._sock_recv(READ_SIZE)  # raises BlockingIOError when there is none
            if len(data) <= bufsize:  # also b"": the connection is closed
                return data
            self._rbuf, self._rpos, self._rsock = data, 0, self._sock
        pos = self._rpos
        self._rpos = pos + bufsize
        return self._rbuf[pos : pos + bufsize]
