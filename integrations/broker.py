"""How many messages wait in each Celery queue, read from the Redis broker (the only Redis reader here)."""
import redis
from django.conf import settings

# kombu's Redis transport keeps one list per queue and priority step: the queue's name for priority 0 and
# "<queue>\x06\x16<step>" for the others (kombu.transport.redis, PRIORITY_STEPS and the separator).
_PRIORITY_STEPS = (0, 3, 6, 9)
_SEPARATOR = "\x06\x16"


def queue_names() -> list[str]:
    names = {settings.CELERY_TASK_DEFAULT_QUEUE, "cpu", settings.WEBHOOK_QUEUE}
    if settings.GPU_QUEUE:
        names.add(settings.GPU_QUEUE)
    return sorted(names)


def queue_depths() -> dict[str, int]:
    """{queue: messages waiting}; raises redis.RedisError when the broker does not answer."""
    prefix = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", "")
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        depths = {}
        for queue in queue_names():
            keys = [f"{prefix}{queue}" if step == 0 else f"{prefix}{queue}{_SEPARATOR}{step}"
                    for step in _PRIORITY_STEPS]
            pipeline = client.pipeline(transaction=False)
            for key in keys:
                pipeline.llen(key)
            depths[queue] = sum(pipeline.execute())
        return depths
    finally:
        client.close()
