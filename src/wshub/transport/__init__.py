"""asyncio transports: HTTP/1.1 (and HTTP/2), the per-client links, ``HttpServer``."""
