import { createContext, useContext } from 'react';
import type { Me } from './api';

/** Who is logged in (``/me``), and how to log out (with the reason shown on the login page). */
export interface Session {
  me: Me;
  logout: (reason?: string) => void;
}

export const SessionContext = createContext<Session | null>(null);

export function useSession(): Session {
  const session = useContext(SessionContext);
  if (!session) throw new Error('useSession outside a logged-in page');
  return session;
}
