from twisted.application.service import ServiceMaker

p2pnode = ServiceMaker("p2pnet node", "p2pnet.tap", "A p2pnet peer-to-peer node: Kademlia DHT, mesh, sync and chord sockets, control API.", "p2pnode")
