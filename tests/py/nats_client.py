"""An independent NATS JetStream client for the end-to-end tests (nats-py).

It shares no code with flow-archiver.

  produce URL SPEC.json             records: [{"subject", "value_b64", "headers"}], each acked
  read URL STREAM N [--timeout S]   the stream's messages from the start, one JSON object
                                    each: at least N (or what came before the timeout),
                                    plus any that follow within 2 s
  stream URL NAME SUBJECT           creates a stream capturing SUBJECT
  pending URL STREAM CONSUMER       prints "num_pending num_ack_pending" of the consumer
  ack-policy URL STREAM CONSUMER    prints the consumer's ack policy (none, all, explicit)
  consumer URL STREAM CONSUMER ACK  creates a durable pull consumer with that ack policy
  take URL STREAM CONSUMER N        pulls N messages from the consumer and acks none of them
                                    (a process that crashed with them pending)
  limit URL STREAM MAX_MSGS         keeps only the stream's last MAX_MSGS messages
  delete URL STREAM SEQ             deletes one message from the stream
"""

import asyncio
import base64
import json
import sys
import time

import nats


async def produce(url, spec_path):
    with open(spec_path) as f:
        records = json.load(f)
    nc = await nats.connect(url)
    js = nc.jetstream()
    for r in records:
        value = base64.b64decode(r["value_b64"])
        headers = {k: v for k, v in r.get("headers", [])} or None
        await js.publish(r["subject"], value, headers=headers)
    await nc.close()
    print(len(records))


async def read(url, stream, n, timeout):
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe("", durable=None, stream=stream)
    seen, deadline, settle = 0, time.time() + timeout, None
    while time.time() < deadline and (settle is None or time.time() < settle):
        try:
            msgs = await sub.fetch(100, timeout=0.5)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            # nats-py raises the asyncio one when a partial batch times out.
            continue
        for m in msgs:
            out = {
                "subject": m.subject,
                "headers": dict(m.headers or {}),
                "value_b64": base64.b64encode(m.data).decode(),
            }
            try:
                out["json"] = json.loads(m.data)
            except ValueError:
                pass
            print(json.dumps(out), flush=True)
            await m.ack()
            seen += 1
            if seen >= n and settle is None:
                settle = time.time() + 2.0
    await nc.close()


async def stream(url, name, subject):
    nc = await nats.connect(url)
    await nc.jetstream().add_stream(name=name, subjects=[subject])
    await nc.close()


async def pending(url, stream, consumer):
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        info = await js.consumer_info(stream, consumer)
        print(info.num_pending, info.num_ack_pending)
    except nats.js.errors.NotFoundError:
        print(-1, -1)
    await nc.close()


async def ack_policy(url, stream, consumer):
    nc = await nats.connect(url)
    js = nc.jetstream()
    info = await js.consumer_info(stream, consumer)
    policy = info.config.ack_policy
    print(getattr(policy, "value", policy))
    await nc.close()


async def consumer(url, stream, name, ack):
    nc = await nats.connect(url)
    js = nc.jetstream()
    config = nats.js.api.ConsumerConfig(
        durable_name=name, ack_policy=nats.js.api.AckPolicy(ack)
    )
    await js.add_consumer(stream, config)
    await nc.close()


async def take(url, stream, consumer, n):
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(consumer, stream)
    taken = 0
    while taken < n:
        msgs = await sub.fetch(n - taken, timeout=10)
        taken += len(msgs)
    await nc.close()
    print(taken)


async def limit(url, stream, max_msgs):
    nc = await nats.connect(url)
    js = nc.jetstream()
    info = await js.stream_info(stream)
    config = info.config
    config.max_msgs = max_msgs
    await js.update_stream(config)
    print((await js.stream_info(stream)).state.first_seq)
    await nc.close()


async def delete(url, stream, seq):
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.delete_msg(stream, seq)
    await nc.close()


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "produce":
        asyncio.run(produce(*args))
    elif cmd == "read":
        timeout = float(args[args.index("--timeout") + 1]) if "--timeout" in args else 60.0
        asyncio.run(read(args[0], args[1], int(args[2]), timeout))
    elif cmd == "stream":
        asyncio.run(stream(*args))
    elif cmd == "pending":
        asyncio.run(pending(*args))
    elif cmd == "ack-policy":
        asyncio.run(ack_policy(*args))
    elif cmd == "consumer":
        asyncio.run(consumer(*args))
    elif cmd == "take":
        asyncio.run(take(args[0], args[1], args[2], int(args[3])))
    elif cmd == "delete":
        asyncio.run(delete(args[0], args[1], int(args[2])))
    elif cmd == "limit":
        asyncio.run(limit(args[0], args[1], int(args[2])))
    else:
        sys.exit(__doc__)
