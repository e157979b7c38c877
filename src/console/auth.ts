// Access control of the web console: one random token per console process, presented once
// (from the URL fragment, which browsers never send, or typed into the login form) and then
// carried by an HttpOnly, SameSite=Strict cookie; or sent as `Authorization: Bearer TOKEN` by a
// non-browser client. Also the Host and Origin checks (DNS rebinding, cross-site WebSockets).
import { randomBytes, timingSafeEqual, createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

export const COOKIE_NAME = 'stv_console';

export function newToken(): string {
  return randomBytes(24).toString('base64url');
}

/** Constant-time comparison of a presented token with the console's. */
export function tokenMatches(expected: string, presented: string | undefined): boolean {
  if (presented === undefined) return false;
  const a = createHash('sha256').update(expected).digest();
  const b = createHash('sha256').update(presented).digest();
  return timingSafeEqual(a, b) && presented.length === expected.length;
}

/** The value of one cookie in a Cookie header (RFC 6265 §5.4), or undefined. */
export function cookieValue(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

/** The token a request carries: its Authorization bearer value, else the console's cookie. */
export function presentedToken(req: IncomingMessage): string | undefined {
  const auth = req.headers.authorization;
  if (auth !== undefined) {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
    return m ? m[1] : undefined;
  }
  return cookieValue(req.headers.cookie, COOKIE_NAME);
}

export function sessionCookie(token: string): string {
  return `${COOKIE_NAME}=${token}; Path=/; HttpOnly; SameSite=Strict`;
}

/**
 * Host names a request may address: the listen address itself and, for a loopback listener,
 * `localhost`. Anything else (a DNS name rebound to 127.0.0.1) is refused.
 */
export function allowedHosts(host: string, port: number): Set<string> {
  const hostPart = host.includes(':') ? `[${host}]` : host;
  const s = new Set([`${hostPart}:${port}`]);
  if (isLoopback(host)) {
    s.add(`localhost:${port}`);
    s.add(`127.0.0.1:${port}`);
    s.add(`[::1]:${port}`);
  }
  return s;
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** An Origin header is ours when it is http://HOST for a Host we accept (RFC 6454 §7). */
export function originAllowed(origin: string | undefined, hosts: Set<string>): boolean {
  if (origin === undefined) return true; // not a browser: the token alone decides
  const m = /^http:\/\/([^/]+)$/.exec(origin);
  return m !== null && hosts.has(m[1]!.toLowerCase());
}
