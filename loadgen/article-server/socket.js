// The article's socket.js, verbatim (seed/document-occupancy-article.txt).
import { Server } from 'socket.io';

export const handleSockets = (server) => {
  const io = new Server(server, {
    cors: {
      origin: 'http://localhost:5173',
      methods: ['GET', 'POST'],
    },
  });

  const roomsData = {};

  function transformObject(input) {
    let result = [];

    for (const key in input) {
      if (input.hasOwnProperty(key)) {
        let obj = {
          roomName: key,
          connectedSocketIds: input[key],
        };
        result.push(obj);
      }
    }

    return result;
  }

  io.on('connection', (socket) => {
    socket.on('join_document_room', (data) => {
      console.log(data, 'socket group');
      socket.join(data);

      if (!roomsData[data]) {
        roomsData[data] = [];
      } else {
        io.to(socket.id).emit('is_occupied', 'Its occupied');
      }

      roomsData[data].push(socket.id);
    });

    socket.on('disconnect', (reason) => {
      const transformedRoomsData = transformObject(roomsData);

      transformedRoomsData.map((item) => {
        if (item.connectedSocketIds[0] === socket.id) {
          const room = io.sockets.adapter.rooms.has(item.roomName)
            ? Array.from(io.sockets.adapter.rooms.get(item.roomName))
            : false;

          if (room) {
            const releasedId = Array.from(room)[0];

            io.to(releasedId).emit('is_released', 'this is released');
          }
        }

        //clean up object
        if (item.connectedSocketIds.includes(socket.id)) {
          const indexToDelete = roomsData[item.roomName].indexOf(socket.id);

          if (indexToDelete !== -1) {
            roomsData[item.roomName].splice(indexToDelete, 1);
          }

          if (roomsData[item.roomName].length < 1) {
            delete roomsData[item.roomName];
          }
        }
      });
    });
  });
};
