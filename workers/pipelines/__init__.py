"""Pure ML pipelines over local directories: no Django imports, CPU everywhere, GPU when present.

Every long-running pipeline takes `report(percent: int, message: str)`; the caller's callback may raise
`JobCancelled`, which pipelines let propagate so that cancellation stops work at the next safe point.
"""
