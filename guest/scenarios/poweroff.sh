# Power off at once: the boot-time benchmark's scenario.
