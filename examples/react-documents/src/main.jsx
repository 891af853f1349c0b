// The article's documents UI on occupancy-client/react, in React's StrictMode (which mounts every
// component twice in development: still one join).
import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { Occupancy } from 'occupancy-client';
import { OccupancyProvider } from 'occupancy-client/react';
import { App } from './App.jsx';

const params = new URLSearchParams(location.search);
// Each tab gets its own name (sessionStorage is per tab): two windows are two people.
const NAMES = ['Ann', 'Ben', 'Cleo', 'Dev', 'Eve', 'Finn', 'Gus', 'Hana', 'Ivo', 'Jun'];
const name =
  params.get('name') ||
  sessionStorage.getItem('occupancy.name') ||
  `${NAMES[Math.floor(Math.random() * NAMES.length)]} ${10 + Math.floor(Math.random() * 90)}`;
sessionStorage.setItem('occupancy.name', name);
// The documents example's demo identify hook reads ?user= and ?name= from the WebSocket URL; a real
// application's server takes them from its session cookie.
const user = params.get('user') || '';

// One client per tab, made once, outside React.
const occupancy = new Occupancy('/occupancy', { params: { user, name } });
window.occupancy = occupancy; // for the curious, and for the browser test
window.received = [];
occupancy.on('message', (ev) => window.received.push(ev.ev));

createRoot(document.getElementById('root')).render(
  <StrictMode>
    <OccupancyProvider client={occupancy}>
      <App name={name} user={user} />
    </OccupancyProvider>
  </StrictMode>,
);
