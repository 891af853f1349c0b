// The article's index.js ("Tracking Active Users on Specific Routes Using WebSockets",
// seed/document-occupancy-article.txt), verbatim except one line: the port comes from PORT
// (default 9000, the article's) so the comparison can run beside other servers.
import express from 'express';
import http from 'http';
import cors from 'cors';

const app = express();
const PORT = process.env.PORT || 9000;
import { handleSockets } from './socket.js'

app.use(cors());

const server = http.createServer(app);

handleSockets(server);


app.get('/', (req, res) => {
  res.send('Hello, World!');
});

server.listen(PORT, () => {
  console.log(`Server is running on http://localhost:${PORT}`);
});
