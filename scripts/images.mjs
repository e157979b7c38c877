#!/usr/bin/env node
// npm run images: build (or refresh) the cached guest images and print where they are.
import { ensureGuestImages } from './lib/images.mjs';

const paths = ensureGuestImages({ log: (m) => process.stderr.write(`images: ${m}\n`) });
process.stdout.write(`${JSON.stringify(paths, null, 2)}\n`);
