"""Sans-I/O WebSocket protocol: frames, handshake, connection state, permessage-deflate.

Nothing in this package does I/O, reads a clock or imports asyncio.
"""
